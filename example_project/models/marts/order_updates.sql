-- Incremental: latest state per order. On incremental runs only rows updated at or after the
-- newest row already loaded are selected; with unique_key the adapter's default strategy
-- (delete+insert on dbt-duckdb, merge on BigQuery) replaces them instead of duplicating them.
{{ config(materialized='incremental', unique_key='order_id') }}

select
    order_id,
    customer_id,
    status,
    updated_at,
    {{ dbt.current_timestamp() }} as loaded_at
from {{ ref('stg_orders') }}
{% if is_incremental() %}
where updated_at >= (select max(updated_at) from {{ this }})
{% endif %}
