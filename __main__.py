from kaffee.cli import main

raise SystemExit(main())
