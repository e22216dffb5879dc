-- fails at run time in BigQuery (not at compile time): the table does not exist
select * from `{{ target.project }}`.`{{ target.dataset }}`.`no_such_table`
