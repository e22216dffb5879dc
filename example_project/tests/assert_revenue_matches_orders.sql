-- Refs two models, so dagster-dbt maps it to no asset check: its verdict is recorded as an
-- observation on both parents. Fails on purpose when the dbt var fail_test names it.
with per_day as (select sum(orders) as total from {{ ref('daily_revenue') }}),
     all_orders as (select count(*) as total from {{ ref('orders') }})
select per_day.total as per_day_total, all_orders.total as orders_total
from per_day, all_orders
where per_day.total <> all_orders.total
{% if var('fail_test', none) == 'assert_revenue_matches_orders' %}
union all select -1, -1
{% endif %}
