from services.processor.app import run

run()
