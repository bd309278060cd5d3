pytest_plugins = ["tests.support.registries", "tests.support.arm"]
