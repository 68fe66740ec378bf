from jianmu.cli import app

app()
