from agn_cli.cli.app import main

main()
