from mrcnn.cli.main import main

main()
