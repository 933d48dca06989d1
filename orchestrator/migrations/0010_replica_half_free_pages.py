from django.db import migrations


class Migration(migrations.Migration):
    """Half of each page free, not a quarter: a replica's row is updated twice soon after it
    is inserted (the desired generation it went out in, then its agent's first report), and
    with a quarter free half of those updates found no room on their page (and wrote an
    entry in every index): 51 % in place at 10,000 replicas, 99 % with half
    (benchmarks/scheduler_throughput.py --pg-statements)."""

    dependencies = [
        ("orchestrator", "0009_replica_reports_update_in_place"),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE orchestrator_replica SET (fillfactor = 50)",
            reverse_sql="ALTER TABLE orchestrator_replica SET (fillfactor = 75)",
        ),
    ]
