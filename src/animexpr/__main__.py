from animexpr.cli import main

main()
