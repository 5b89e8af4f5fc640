"""Rules: events in, bounded and audited actions out.

`RuleEngine` follows the event log, matches each event through `RuleIndex` (by
type and agent, globs resolved at load), keeps each rule's window, cooldown,
firing limit and suspension (`RuleState`), and acts only through the ports in
runtime.rules.ports: control methods, the scheduler, declared exec commands.
"""
