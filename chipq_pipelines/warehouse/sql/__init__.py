"""SQL files of the warehouse (DDL ``ddl_*.sql`` and bound-parameter statements)."""
