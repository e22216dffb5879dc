-- incremental, append (no unique_key): every run inserts the active customers again
{{ config(materialized='incremental', incremental_strategy='append') }}
select id, {{ var('batch') }} as batch
from {{ ref('active_customers') }}
