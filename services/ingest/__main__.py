import uvicorn

from services.ingest.app import create_app
from services.ingest.settings import Settings

settings = Settings()
uvicorn.run(create_app(settings), host=settings.ingest_host, port=settings.ingest_port,
            log_level=settings.log_level.lower(), timeout_graceful_shutdown=20)
