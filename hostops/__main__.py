from hostops.cli import main

main()
