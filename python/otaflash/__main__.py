from otaflash.cli import main

raise SystemExit(main())
