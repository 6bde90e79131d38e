-- Which optional tables this snapshot has (older warehouses have no alert tables).
SELECT table_schema || '.' || table_name AS qualified_name
FROM information_schema.tables
WHERE table_schema IN ('raw', 'ops', 'marts');
