-- table with alias and a custom schema: the relation is <dataset>_marts.dim_customers
{{ config(materialized='table', alias='dim_customers', schema='marts') }}
select id, name, amount, amount * 2 as double_amount
from {{ ref('active_customers') }}
