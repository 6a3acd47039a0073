from labpnn.cli import main

raise SystemExit(main())
