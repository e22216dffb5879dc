-- singular test: one inactive customer exists, so this warns (warn_if > 0, error_if > 5)
{{ config(severity='error', warn_if='>0', error_if='>5') }}
select * from {{ ref('stg_customers') }} where not active
