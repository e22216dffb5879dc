-- fails while var break_model is true (used for the re-attach test)
{% if var('break_model') %}
select * from `{{ target.project }}`.`{{ target.dataset }}`.`missing_for_flaky`
{% else %}
select 1 as fixed
{% endif %}
