from tests.support.registry import registry  # noqa: F401 (real docker-registry fixture)
