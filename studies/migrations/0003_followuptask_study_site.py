"""Copy each task's study and site from its subject onto the task (issue 3: the metrics
aggregate, the worklist and the reminder scan no longer join a million tasks to their
subjects), and index the worklist order and the metrics grouping.

The columns are added nullable, filled from the subject in one UPDATE, then made NOT NULL.
Their foreign keys are DEFERRABLE INITIALLY DEFERRED (Django's default): the checks of
the UPDATE would still be pending at SET NOT NULL ("pending trigger events"), so the
UPDATE runs with constraints IMMEDIATE.

The subject's own index goes: task_subject_event_seq_uniq (subject, event_code,
sequence) serves every lookup by subject, and each index costs bulk inserts time.
Extended statistics tell the planner that a task's assignee decides its site and study
(see WORKLIST_STATISTICS)."""

import django.db.models.deletion
from django.db import migrations, models

BACKFILL = """
SET CONSTRAINTS ALL IMMEDIATE;
UPDATE studies_followuptask AS task
   SET study_id = subject.study_id, site_id = subject.site_id
  FROM studies_subject AS subject
 WHERE subject.id = task.subject_id;
SET CONSTRAINTS ALL DEFERRED;
"""

# A coordinator's tasks are at their sites: without this, PostgreSQL multiplies the
# selectivities of "assignee = x" and "site IN (their sites)", expects a fraction of the
# rows, and for a worklist page past the first few sorts every task of the assignee
# instead of reading task_worklist_urgency_idx in order. Takes effect at the next ANALYZE.
WORKLIST_STATISTICS = """
CREATE STATISTICS task_assignee_site_study_stats (dependencies)
    ON assignee_id, site_id, study_id FROM studies_followuptask;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('sites', '0001_initial'),
        ('studies', '0002_subject_import_row'),
    ]

    operations = [
        migrations.AddField(
            model_name='followuptask',
            name='study',
            field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name='+', to='studies.study'),
        ),
        migrations.AddField(
            model_name='followuptask',
            name='site',
            field=models.ForeignKey(db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT,
                                    related_name='+', to='sites.site'),
        ),
        migrations.RunSQL(BACKFILL, reverse_sql=migrations.RunSQL.noop),
        migrations.AlterField(
            model_name='followuptask',
            name='subject',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                    related_name='tasks', to='studies.subject'),
        ),
        migrations.AlterField(
            model_name='followuptask',
            name='study',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                    related_name='+', to='studies.study'),
        ),
        migrations.AlterField(
            model_name='followuptask',
            name='site',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                    related_name='+', to='sites.site'),
        ),
        migrations.RemoveIndex(
            model_name='followuptask',
            name='task_worklist_idx',
        ),
        migrations.AddIndex(
            model_name='followuptask',
            index=models.Index(
                models.F('assignee'),
                models.Case(models.When(status='overdue', then=models.Value(0)),
                            models.When(status='open', then=models.Value(1)),
                            default=models.Value(2), output_field=models.IntegerField()),
                models.F('window_close'), models.F('target_date'), models.F('id'),
                condition=models.Q(status__in=('overdue', 'open', 'upcoming')),
                include=('site', 'study'), name='task_worklist_urgency_idx'),
        ),
        migrations.RunSQL(WORKLIST_STATISTICS, reverse_sql="DROP STATISTICS task_assignee_site_study_stats;"),
        migrations.AddIndex(
            model_name='followuptask',
            index=models.Index(fields=['study', 'site', 'event_code'],
                               include=('status', 'window_open', 'window_close', 'completed_on'),
                               name='task_metrics_idx'),
        ),
    ]
