# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_avala_mirror_global_optspecs
    string join \n config= log-format= db= h/help V/version
end

function __fish_avala_mirror_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_avala_mirror_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_avala_mirror_using_subcommand
    set -l cmd (__fish_avala_mirror_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -s V -l version -d 'Print version'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "run" -d 'The daemon: every enabled resource on its schedule until SIGTERM/SIGINT'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "sync" -d 'One complete cycle of every enabled resource, then exit (cron-friendly)'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "status" -d 'Counts, last syncs and failures, from the local database only'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "serve" -d 'Answer the Avala API\'s read paths from the mirror, read-only, for scripts on the official SDK (AVALA_BASE_URL=http://127.0.0.1:8484/api/v1)'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "events" -d 'The change log from the database'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "exports" -d 'Export archives: list them, download one, or create one and wait for it'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "check" -d 'Validate the configuration and make one API call'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "demo" -d 'Run the built-in simulator and the mirror against it, in a local folder'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "simulate" -d 'The built-in Avala API simulator alone'
complete -c avala-mirror -n "__fish_avala_mirror_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand run" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand run" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand run" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand run" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand sync" -l only -d 'Only this collection, by its table: datasets, sequences, items, slices, exports, or (JSON:API) projects, jsonapi_datasets, entries, annotations, note_feeds, note_comments, project_members' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand sync" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand sync" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand sync" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand sync" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand status" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand status" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand status" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand status" -l json
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand status" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand serve" -l listen -d 'host:port to listen on (default: serve.listen, else 127.0.0.1:8484)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand serve" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand serve" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand serve" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand serve" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l since -d 'After this event id (evt_…) or sequence number' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l type -d 'Only types matching this glob, e.g. \'sequence.*\'' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l follow -d 'Keep printing new events as they are stored'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -l json -d 'One JSON document per line (the SPEC §4 event)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -f -a "redeliver" -d 'Send failed deliveries again (and re-enable a sink disabled by 410 Gone)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and not __fish_seen_subcommand_from redeliver help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from redeliver" -l sink -d 'Only this sink (its `name`, or `<type>-<index>` by default)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from redeliver" -l since -d 'Only events after this id (evt_…) or sequence number' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from redeliver" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from redeliver" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from redeliver" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from redeliver" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from help" -f -a "redeliver" -d 'Send failed deliveries again (and re-enable a sink disabled by 410 Gone)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand events; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -f -a "list" -d 'Exports in the mirror with their download status, size and path'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -f -a "download" -d 'Download one export\'s archive now (resumes a partial one)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -f -a "create" -d 'Request a new export; with --wait follow it, with --download fetch it when done'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and not __fish_seen_subcommand_from list download create help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from list" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from list" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from list" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from list" -l json
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from download" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from download" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from download" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from download" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l dataset -d 'Dataset uid to export (repeatable)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l project -d 'Project uid to export (repeatable)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l slice -d 'Slice uid to export (repeatable)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l format -r -f -a "avala-json-external\t''
YOLO\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l name -d 'Export name (default: "avala-mirror <time>")' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l poll -d 'How often to ask for the export\'s status while waiting' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l wait -d 'Wait until the export is exported, failed or aborted'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -l download -d 'Wait, then download the archive'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from help" -f -a "list" -d 'Exports in the mirror with their download status, size and path'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from help" -f -a "download" -d 'Download one export\'s archive now (resumes a partial one)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from help" -f -a "create" -d 'Request a new export; with --wait follow it, with --download fetch it when done'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand exports; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand check" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand check" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand check" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand check" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -l dir -d 'Where the demo\'s database goes' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -l duration -d 'How long to watch events after the first sync' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -l seed -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand demo" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l listen -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l seed -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l api-key -d 'The key clients must send in X-Avala-Api-Key' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l datasets -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l items -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l tick -d 'How often the world changes (0s: never)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l archive-bytes -d 'Size in bytes of each export archive on the storage address' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l latency -d 'Added to every API answer, as a network\'s round trip would (e.g. 200ms)' -r
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l config -d 'Configuration file (else $AVALA_MIRROR_CONFIG, ./avala-mirror.toml, /etc/avala-mirror/config.toml)' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l log-format -d 'Log format on stderr: text, or json (the default under systemd, i.e. with $JOURNAL_STREAM)' -r -f -a "text\t''
json\t''"
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -l db -d 'The mirror database, for the commands that only read it (status, events, exports list); else `store.path` of the configuration. No API key needed' -r -F
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand simulate" -s h -l help -d 'Print help'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "run" -d 'The daemon: every enabled resource on its schedule until SIGTERM/SIGINT'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "sync" -d 'One complete cycle of every enabled resource, then exit (cron-friendly)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "status" -d 'Counts, last syncs and failures, from the local database only'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "serve" -d 'Answer the Avala API\'s read paths from the mirror, read-only, for scripts on the official SDK (AVALA_BASE_URL=http://127.0.0.1:8484/api/v1)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "events" -d 'The change log from the database'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "exports" -d 'Export archives: list them, download one, or create one and wait for it'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "check" -d 'Validate the configuration and make one API call'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "demo" -d 'Run the built-in simulator and the mirror against it, in a local folder'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "simulate" -d 'The built-in Avala API simulator alone'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and not __fish_seen_subcommand_from run sync status serve events exports check demo simulate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and __fish_seen_subcommand_from events" -f -a "redeliver" -d 'Send failed deliveries again (and re-enable a sink disabled by 410 Gone)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and __fish_seen_subcommand_from exports" -f -a "list" -d 'Exports in the mirror with their download status, size and path'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and __fish_seen_subcommand_from exports" -f -a "download" -d 'Download one export\'s archive now (resumes a partial one)'
complete -c avala-mirror -n "__fish_avala_mirror_using_subcommand help; and __fish_seen_subcommand_from exports" -f -a "create" -d 'Request a new export; with --wait follow it, with --download fetch it when done'
