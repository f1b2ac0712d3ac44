"""jresnet.configs.describe: every config key with its default and comment."""

from jresnet.configs import default, describe

SOURCE = """
def get_config():
    config = ml_collections.ConfigDict()

    # Model.
    config.model = "resnet20"  # the depth
    config.shortcut = "B"

    # Run.
    # Two lines
    # about the cache.
    config.cache = "~/c"
    # About the seed.
    config.seed = 0
    return config
"""


def test_key_docs_reads_sections_trailing_and_block_comments():
    assert describe.key_docs(SOURCE) == [
        describe.KeyDoc("model", "Model", "the depth"),
        describe.KeyDoc("shortcut", "Model", ""),
        describe.KeyDoc("cache", "Run", "Two lines about the cache."),
        describe.KeyDoc("seed", "Run", "About the seed."),
    ]


def test_every_default_key_has_a_section_and_a_comment():
    docs = describe.key_docs(describe.DEFAULT_CONFIG_FILE.read_text())
    assert sorted(d.key for d in docs) == sorted(default.get_config())
    assert all(d.section and d.comment for d in docs), [d.key for d in docs if not d.comment]


def test_describe_lists_every_key_with_its_value_within_100_columns():
    config = default.get_config()
    config.learning_rate = 0.5
    text = describe.describe_default(config)
    for key in config:
        assert f"--config.{key}=" in text
    assert "--config.learning_rate=0.5\n" in text
    assert "--config.data_dir=''\n" in text
    assert max(len(line) for line in text.splitlines()) <= 100
