from encimap.cli import main

raise SystemExit(main())
