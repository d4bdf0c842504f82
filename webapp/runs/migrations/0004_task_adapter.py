from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0003_task_compare_group"),
    ]

    operations = [
        migrations.AddField(
            model_name="task",
            name="adapter",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
