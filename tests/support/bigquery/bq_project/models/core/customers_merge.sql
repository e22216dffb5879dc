-- incremental, merge on unique_key: the second batch updates ids >= 2 and adds id 5
{{ config(materialized='incremental', unique_key='id', incremental_strategy='merge') }}
select id, name, amount + {{ var('batch') }} * 100 as amount, {{ var('batch') }} as batch
from {{ ref('stg_customers') }}
{% if is_incremental() %}
where id >= 2
union all
select 5 as id, 'EVE' as name, 5.0 + {{ var('batch') }} * 100 as amount, {{ var('batch') }} as batch
{% endif %}
