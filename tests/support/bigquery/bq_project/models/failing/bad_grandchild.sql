{{ config(materialized='view') }}
select * from {{ ref('bad_child') }}
