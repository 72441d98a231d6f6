from reproml.cli import main

raise SystemExit(main())
