from .miniature import main

raise SystemExit(main())
