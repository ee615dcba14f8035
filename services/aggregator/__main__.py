"""Run the aggregator's Faust worker: ``python -m services.aggregator``."""

import asyncio

from faust import Worker

from services.aggregator.app import create_app
from services.aggregator.settings import Settings
from shared.kafka import ensure_topics
from shared.logs import setup_logging

settings = Settings()
setup_logging("aggregator", settings.log_level)
asyncio.run(ensure_topics(settings))
app = create_app(settings)
Worker(app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
