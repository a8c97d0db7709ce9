from mea.cli import run

run()
