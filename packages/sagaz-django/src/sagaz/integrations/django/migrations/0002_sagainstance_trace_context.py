# Sagaz 0.x: store the W3C trace context a saga was started in (issue #8).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sagaz", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="sagainstance",
            name="trace_context",
            field=models.TextField(
                blank=True,
                help_text="JSON: the W3C trace context (traceparent) the saga was started in",
                null=True,
            ),
        ),
    ]
