from offline_rl.cli import main

main()
