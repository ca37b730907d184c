from facecaption.cli import main

raise SystemExit(main())
