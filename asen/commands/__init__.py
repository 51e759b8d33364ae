"""The commands that need only the library: data, train, eval, embed, compare, index,
search and explain. asen/cli.py composes them with the commands of asen.export and
asen.client into `asen`."""
