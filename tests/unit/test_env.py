from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.settings.env import Env


def test_it_reads_typed_values_with_defaults():
    env = Env({"A": "12", "B": "yes", "C": "x, y,,z", "F": "0.5"})
    assert env.int("A", 1) == 12
    assert env.int("MISSING", 7) == 7
    assert env.bool("B", False) is True
    assert env.list("C", []) == ["x", "y", "z"]
    assert env.float("F", 1.0) == 0.5


@pytest.mark.parametrize(
    "method, value, args",
    [
        ("int", "twelve", (1,)),
        ("bool", "maybe", (False,)),
        ("float", "fast", (1.0,)),
        ("redis_url", "localhost:6379", ("redis://127.0.0.1:6379/0",)),
    ],
)
def test_it_fails_loudly_naming_the_variable(method, value, args):
    with pytest.raises(ImproperlyConfigured, match=r"Environment variable X="):
        getattr(Env({"X": value}), method)("X", *args)


def test_it_enforces_integer_bounds():
    with pytest.raises(ImproperlyConfigured, match=r"in \[1, 4\]"):
        Env({"X": "9"}).int("X", 1, min=1, max=4)


def test_it_parses_sqlite_urls_relative_to_the_project():
    base = Path("/srv/app")
    db = Env({"DATABASE_URL": "sqlite:///var/db.sqlite3"}).database("DATABASE_URL", "", base_dir=base)
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == "/srv/app/var/db.sqlite3"
    absolute = Env({"D": "sqlite:////tmp/x.db"}).database("D", "", base_dir=base)
    assert absolute["NAME"] == "/tmp/x.db"


def test_it_parses_postgres_urls():
    db = Env({"D": "postgres://u:p%40ss@db.local:5433/asynclm"}).database("D", "", base_dir=Path("/"))
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "asynclm",
        "u",
        "p@ss",
        "db.local",
        "5433",
    )


@pytest.mark.parametrize("url", ["mysql://x/y", "postgres://host/", "sqlite://"])
def test_it_rejects_unsupported_database_urls(url):
    with pytest.raises(ImproperlyConfigured):
        Env({"D": url}).database("D", "", base_dir=Path("/"))
