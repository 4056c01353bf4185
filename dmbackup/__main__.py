from dmbackup.cli.main import main

main()
