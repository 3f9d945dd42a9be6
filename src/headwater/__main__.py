from headwater.cli.main import cli

cli()
