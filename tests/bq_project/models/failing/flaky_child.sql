select * from {{ ref('flaky') }}
