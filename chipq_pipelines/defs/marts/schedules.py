"""Scheduled materializations."""

import datetime as dt

import dagster as dg

from chipq_pipelines.defs.marts.assets import defect_rates_job


@dg.schedule(
    name="daily_defect_rates",
    cron_schedule="15 0 * * *",
    execution_timezone="UTC",
    job=defect_rates_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-materializes yesterday's and today's defect rates at 00:15 UTC.",
)
def daily_defect_rates(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    return [
        dg.RunRequest(run_key=f"daily|{day.isoformat()}|{today.isoformat()}", partition_key=day.isoformat())
        for day in (today - dt.timedelta(days=1), today)
    ]
