from services.notifier.app import run

run()
