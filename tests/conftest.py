pytest_plugins = ["tests.support.registries"]
