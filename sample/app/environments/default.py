GREETING = "hello from default"

# Path of the sqlite database; relative paths are relative to the
# directory the command runs in.
DATABASE = "tmp/sample.sqlite"
