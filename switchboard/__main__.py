from switchboard.cli import app

app(prog_name="switchboard")
