{#-
  Orders per day, one Dagster partition per day: `shop_orders_daily` in definitions.py, a
  DailyPartitionsDefinition with BackfillPolicy.single_run(), so a backfill of N days is ONE dbt build.
  dbt's microbatch strategy builds each day as its own batch: one day can fail while the others are
  written, and the watcher records that day's partition as failed and the others as materialized.

  Enabled only by the var partitioned_models, which definitions.py parses the project with (into
  target/partitioned), so the shop's own job, its manifest and its tests stay as they were.

  * min_date / max_date: the build's partition window, rendered by the watcher
    (DbtWatcherResource.partition_vars), as dagster-dbt's partitioned example templates them. dbt's
    --event-time-start/--event-time-end (the watcher passes the same window) pick the batches, and each
    batch reads only its day of stg_orders (its event_time).
  * fail_partition: a day (YYYY-MM-DD) whose batch fails at run time, on purpose.
-#}
{{ config(
    enabled=var('partitioned_models', false),
    materialized='incremental',
    incremental_strategy='microbatch',
    event_time='order_date',
    batch_size='day',
    begin='2024-02-01',
    lookback=0,
) }}
{%- set fail_day = var('fail_partition', none) -%}
{%- set batch_day = model.batch.event_time_start.strftime('%Y-%m-%d') if model.batch else none %}
select
    order_date,
    count(*) as orders,
    count(distinct customer_id) as customers,
    -- Which build wrote the row: the window the watcher rendered for it.
    '{{ var("min_date") }}' as built_for_min_date,
    '{{ var("max_date") }}' as built_for_max_date
from {{ ref('stg_orders') }}
where order_date >= '{{ var("min_date") }}' and order_date < '{{ var("max_date") }}'
{%- if fail_day and fail_day == batch_day %}
    -- A run-time error in DuckDB and PostgreSQL alike (not a compile error, so it is retried).
    and cast('orders_daily: partition {{ fail_day }} failed on purpose (dbt var fail_partition)' as integer) = 0
{%- endif %}
group by order_date
