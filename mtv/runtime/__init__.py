"""What a process of a run needs from its environment: ranks and collectives (`distributed`),
and graceful stops on SIGINT / SIGTERM (`signals`). Imports nothing else of mtv."""
