from django.db import migrations


def install(apps, schema_editor):
    from webapp.tools.demo import install_demo_pack

    install_demo_pack(apps.get_model("tools", "ToolPack"), apps.get_model("tools", "Tool"))


class Migration(migrations.Migration):
    dependencies = [("tools", "0001_initial")]
    operations = [migrations.RunPython(install, migrations.RunPython.noop)]
