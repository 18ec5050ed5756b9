"""Shared fixtures: one Ray instance for the tests that need one, always shut down."""

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs for the whole session (starting Ray costs seconds); shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
