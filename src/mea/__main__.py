from mea.cli.main import run

# Guarded: worker processes are spawned, and a spawned child imports the parent's __main__ module.
if __name__ == "__main__":
    run()
