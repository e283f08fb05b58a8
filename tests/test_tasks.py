import json
import re

import pytest

from llm_embedder.tasks import (
    BUILTIN_TASKS,
    Task,
    UnknownTaskError,
    get_task,
    list_tasks,
    register_task,
    register_tasks_from_file,
    unregister_task,
)

EXPECTED = {
    "qa": ("Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: "),
    "icl": (
        "Convert this example into vector to look for useful examples: ",
        "Convert this example into vector for retrieval: ",
    ),
    "chat": (
        "Embed this dialogue to find useful historical dialogues: ",
        "Embed this historical dialogue for retrieval: ",
    ),
    "lrlm": (
        "Embed this text chunk for finding useful historical chunks: ",
        "Embed this historical text chunk for retrieval: ",
    ),
    "tool": (
        "Transform this user request for fetching helpful tool descriptions: ",
        "Transform this tool description for retrieval: ",
    ),
    "convsearch": (
        "Encode this query and context for searching relevant passages: ",
        "Encode this passage for retrieval: ",
    ),
}


def test_builtin_instructions_are_exact():
    assert BUILTIN_TASKS == tuple(EXPECTED)
    for name, (query, key) in EXPECTED.items():
        task = get_task(name)
        assert task.instruction("query") == query
        assert task.instruction("key") == key


def test_builtin_training_recipes_follow_the_reference_code():
    assert {n: get_task(n).loss for n in EXPECTED} == {
        "qa": "stable_distill", "icl": "stable_distill", "chat": "kl_distill", "lrlm": "kl_distill",
        "tool": "contrastive", "convsearch": "contrastive",
    }
    assert get_task("chat").teacher_temperature == 0.1
    assert get_task("lrlm").teacher_scores_margin == 0.1
    assert get_task("icl").select_positive == "random"
    assert get_task("chat").select_positive == "teacher"
    assert get_task("qa").reward_template == "Knowledge: {key}\n\nQuestion: {query}\n\nAnswer: {answer}"
    assert get_task("chat").reward_template == "{key}\nSpeaker 1: {query}\nSpeaker 2: {answer}"


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownTaskError) as info:
        get_task("nope")
    message = str(info.value)
    assert "nope" in message
    for name in EXPECTED:
        assert name in message


def test_bad_role_is_an_error():
    with pytest.raises(ValueError, match="role"):
        get_task("qa").instruction("document")


def test_register_in_python_and_from_yaml_and_json(tmp_path):
    try:
        task = register_task(name="legal", query_instruction="Find law for: ", key_instruction="Law text: ")
        assert get_task("legal") is task and "legal" in list_tasks()
        yaml_file = tmp_path / "tasks.yaml"
        yaml_file.write_text(
            "tasks:\n  - name: medical\n    query_instruction: 'Q: '\n    key_instruction: 'D: '\n"
            "    loss: kl_distill\n    teacher_temperature: 0.5\n"
        )
        (med,) = register_tasks_from_file(yaml_file)
        assert med.loss == "kl_distill" and med.teacher_temperature == 0.5
        json_file = tmp_path / "tasks.json"
        json_file.write_text(json.dumps([{"name": "code", "query_instruction": "", "key_instruction": ""}]))
        register_tasks_from_file(json_file)
        assert get_task("code").query_instruction == ""
    finally:
        for name in ("legal", "medical", "code"):
            unregister_task(name)
    with pytest.raises(ValueError, match="built-in"):
        unregister_task("qa")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("tasks:\n  - name: x\n    query_instruction: a\n", "key_instruction"),
        ("tasks:\n  - name: x\n    query_instruction: a\n    key_instruction: b\n    loss: mse\n", "loss"),
        ("tasks:\n  - name: x\n    query_instruction: a\n    key_instruction: b\n    colour: red\n", "colour"),
        ("tasks:\n  - name: x\n    query_instruction: a\n    key_instruction: b\n    reward_template: '{key}'\n",
         "reward_template"),
        ("tasks: [unclosed", "cannot parse"),
    ],
)
def test_bad_task_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        register_tasks_from_file(path)
    assert "x" not in list_tasks()


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks:\n  - name: x\n   bad: [\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == (f"{path}:3:4: cannot parse task file: expected <block end>, but found "
                              "'<block mapping start>'")


def test_reregistering_a_user_task_with_other_settings_needs_overwrite():
    try:
        register_task(name="mine", query_instruction="q: ", key_instruction="k: ")
        with pytest.raises(ValueError, match="give it another name, or pass overwrite=True to replace it"):
            register_task(name="mine", query_instruction="other: ", key_instruction="k: ")
        assert register_task(name="mine", query_instruction="other: ", key_instruction="k: ",
                             overwrite=True).query_instruction == "other: "
    finally:
        unregister_task("mine")


def test_a_builtin_task_is_never_replaced_even_with_overwrite(tmp_path):
    """overwrite=True replaced qa's instructions (part of the model contract), while unregister_task('qa') was
    refused; the collision message advised overwrite=True for a built-in too."""
    other = Task(name="qa", query_instruction="other: ", key_instruction="")
    for overwrite in (False, True):
        with pytest.raises(ValueError) as err:
            register_task(other, overwrite=overwrite)
        assert str(err.value) == ("task 'qa' is built in and cannot be replaced (its instructions are part of the "
                                  "model contract); give your task another name")
    path = tmp_path / "t.yaml"  # nor from a file, and nothing of the file is registered
    path.write_text(TASK_HEAD + "  - name: qa\n    query_instruction: 'other: '\n    key_instruction: ''\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: task 'qa' is built in and cannot be replaced"):
        register_tasks_from_file(path, overwrite=True)
    assert "mytask" not in list_tasks()
    assert get_task("qa").query_instruction == EXPECTED["qa"][0]
    assert register_task(get_task("qa"), overwrite=True) == get_task("qa")  # the same settings are fine


TASK_HEAD = "tasks:\n  - name: mytask\n    query_instruction: 'Q: '\n    key_instruction: 'D: '\n"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("teacher_temperature", "hot", "teacher_temperature must be a number, got 'hot'"),
        ("teacher_temperature", "0", "teacher_temperature must be greater than 0, got 0"),
        ("teacher_temperature", "true", "teacher_temperature must be a number, got True"),
        ("teacher_temperature", ".nan", "teacher_temperature must be a number, got nan"),
        ("teacher_scores_margin", "wide", "teacher_scores_margin must be a number, got 'wide'"),
        ("teacher_scores_margin", "-0.5", "teacher_scores_margin must be at least 0, got -0.5"),
        ("teacher_scores_min", "[1]", "teacher_scores_min must be a number, got [1]"),
        ("max_sample_num", "many", "max_sample_num must be a whole number, got 'many'"),
        ("max_sample_num", "2.5", "max_sample_num must be a whole number, got 2.5"),
        ("max_sample_num", "0", "max_sample_num must be at least 1, got 0"),
        ("loss", "mse", "loss must be one of contrastive, kl_distill, stable_distill, got 'mse'"),
        ("select_positive", "[first]", "select_positive must be one of first, random, teacher, teacher-pos, "
                                       "got ['first']"),
        ("select_negative", "best", "select_negative must be one of random, first, teacher-, teacher+, got 'best'"),
        ("scenario", "3", "scenario must be a string, got 3"),
        ("reward_template", "'{{key}} {query} {answer}'", "reward_template lacks {key}"),  # {{key}} is literal text
        ("reward_template", "'{key} {jurisdiction} {query} {answer}'",
         "reward_template uses {jurisdiction}; it may use only {key}, {query} and {answer}"),
        ("reward_template", "'{key} {query} {answer} {}'", "reward_template '{key} {query} {answer} {}': {} is not"
                                                            " a field name; write {field} for a record's field, e.g. "
                                                            "'{title} {text}'"),
    ],
)
def test_bad_task_fields_name_the_file_task_and_field(tmp_path, field, value, message):
    path = tmp_path / "t.yaml"
    path.write_text(TASK_HEAD + f"    {field}: {value}\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{path}: task 'mytask': {message}"
    assert "mytask" not in list_tasks()


def test_task_without_a_usable_name_is_named_by_position(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TASK_HEAD + "  - name: a.b\n    query_instruction: ''\n    key_instruction: ''\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value).startswith(f"{path}: task #1: task name must be")
    assert "mytask" not in list_tasks()  # nothing of a bad file is registered


def test_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TASK_HEAD + "    teacher_temperature: 5e-2\n    max_sample_num: 1e3\n"
                    "    teacher_scores_margin: '0.1'\n    teacher_scores_min: -1\n")
    try:
        (task,) = register_tasks_from_file(path)
        assert (task.teacher_temperature, task.max_sample_num, task.teacher_scores_margin) == (0.05, 1000, 0.1)
        assert isinstance(task.max_sample_num, int) and task.teacher_scores_min == -1
    finally:
        unregister_task("mytask")


def test_redefining_a_builtin_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("- name: qa\n  query_instruction: 'other: '\n  key_instruction: ''\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == (f"{path}: task 'qa' is built in and cannot be replaced (its instructions are part of "
                              "the model contract); give your task another name")
    assert get_task("qa").query_instruction == EXPECTED["qa"][0]
    same = tmp_path / "same.yaml"  # the same settings again are fine
    same.write_text(json.dumps([get_task("qa").to_dict()]))
    assert register_tasks_from_file(same) == [get_task("qa")]


def test_a_task_defined_twice_in_one_file_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(TASK_HEAD + TASK_HEAD.removeprefix("tasks:\n").replace("'Q: '", "'Other: '"))
    with pytest.raises(ValueError, match=r"t\.yaml: task 'mytask' is defined twice with different settings"):
        register_tasks_from_file(path)
    assert "mytask" not in list_tasks()


@pytest.mark.parametrize("name", ["/tmp/x/evil", "../up", "my task/x", " qa", "qa ", "a.b", "-rf", "", "a\n", 5])
def test_a_task_name_that_is_no_simple_name_is_refused(tmp_path, name):
    """A task name becomes a folder (mine's and index's per-task work) and a prompt name: an absolute path, a
    separator, a space or a leading '-' was accepted (mine then built its index at '/tmp/x/evil')."""
    message = f"task name must be letters, digits, '_' or '-' (not starting with '-'), got {name!r}"
    with pytest.raises(ValueError) as err:
        register_task(name=name, query_instruction="q: ", key_instruction="k: ")
    assert str(err.value) == f"task: {message}"
    path = tmp_path / "t.yaml"
    path.write_text(TASK_HEAD + f"  - name: {json.dumps(name)}\n    query_instruction: ''\n    key_instruction: ''\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{path}: task #1: {message}"
    assert "mytask" not in list_tasks() and name not in list_tasks()


@pytest.mark.parametrize("name", ["qa", "legal_cli", "my-task", "t2", "1990", "_x", "médical"])
def test_simple_task_names_are_accepted(name):
    assert Task(name=name, query_instruction="", key_instruction="").name == name


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_task_file_that_is_not_utf8_is_named(tmp_path, suffix):
    """Bad UTF-8 said only "'utf-8' codec can't decode byte 0xff in position 0", without the file."""
    path = tmp_path / f"t{suffix}"
    path.write_bytes(TASK_HEAD.encode() + b"    scenario: caf\xe9\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{path}:5: not valid UTF-8 (byte 0xe9 at column 18)"
    assert "mytask" not in list_tasks()


def test_a_task_file_may_start_with_a_bom(tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"name": "bom", "query_instruction": "", "key_instruction": ""}])
                     .encode())
    try:
        assert [task.name for task in register_tasks_from_file(path)] == ["bom"]
    finally:
        unregister_task("bom")


def test_a_task_file_sets_a_user_task_s_augment_layout(tmp_path):
    """A task file could not set a layout (only Python's register_layout): augment and /v1/augment laid a user task
    out as qa ("Knowledge: ...")."""
    from llm_embedder.augment.prompt import LAYOUTS, augment

    path = tmp_path / "legal.json"
    path.write_text(json.dumps({"tasks": [{
        "name": "legal_layout", "query_instruction": "Find statutes for: ", "key_instruction": "Statute: ",
        "layout": {"header": "Statutes:\n", "query": "Case: {query}\nRuling:", "order": "reversed"}}]}))
    try:
        register_tasks_from_file(path)
        assert augment("legal_layout", "a stolen bike", ["best", "second"]) == (
            "Statutes:\nsecond\nbest\n\nCase: a stolen bike\nRuling:")
        assert register_tasks_from_file(path)  # the same file again is fine
    finally:
        unregister_task("legal_layout")
        LAYOUTS.pop("legal_layout", None)


@pytest.mark.parametrize(("layout", "message"), [
    ("Case: {query}", "layout must be a mapping with any of ['query', 'header', 'separator', 'footer', 'order']"),
    ({"colour": "red"}, "layout: unknown field(s) ['colour']; allowed: ['query', 'header'"),
    ({"query": "Case:"}, "layout query template must contain {query}, got 'Case:'"),
    ({"order": "best-last"}, "layout order must be one of ('ranked', 'reversed', 'sequential'), got 'best-last'"),
    ({"header": 5}, "layout header must be a string, got 5"),
])
def test_a_bad_layout_in_a_task_file_names_the_file_and_task(tmp_path, layout, message):
    from llm_embedder.augment.prompt import LAYOUTS

    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"name": "mytask", "query_instruction": "", "key_instruction": "", "layout": layout}]))
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value).startswith(f"{path}: task 'mytask': ") and message in str(err.value)
    assert "mytask" not in list_tasks() and "mytask" not in LAYOUTS  # nothing of a bad file is registered


def test_a_task_file_cannot_replace_a_builtin_layout(tmp_path):
    from llm_embedder.augment.prompt import LAYOUTS

    qa_layout = LAYOUTS["qa"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps([{**get_task("qa").to_dict(), "layout": {"query": "Q: {query}"}}]))
    with pytest.raises(ValueError, match="task 'qa' is built in: a task file cannot replace its layout"):
        register_tasks_from_file(path, overwrite=True)
    assert LAYOUTS["qa"] == qa_layout


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_task_file_nested_too_deeply_names_the_file_and_line(tmp_path, suffix):
    """The parsers raised RecursionError: a traceback, naming nothing."""
    path = tmp_path / f"deep{suffix}"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(f'{{"name": "x",\n "scenario": {deep}}}\n' if suffix == ".json" else f"name: x\nscenario: {deep}\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{path}:2: nested too deeply"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_task_file_integer_of_too_many_digits_names_the_file_and_line(tmp_path, suffix):
    path = tmp_path / f"big{suffix}"
    big = "9" * 5000
    path.write_text(f'{{"name": "x",\n "n_neg": {big}}}\n' if suffix == ".json" else f"name: x\nn_neg: {big}\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{path}:2: integer too large (more than 4300 digits)"


@pytest.mark.parametrize(("suffix", "message"), [
    (".yaml", "t.yaml:5:1: cannot parse task file: 'loss' is given twice (first on line 4)"),
    (".json", "t.json:5: duplicate key 'loss' (JSON keeps only its last value)"),
])
def test_a_key_given_twice_in_a_task_file_is_refused(tmp_path, suffix, message):
    """yaml.safe_load and json.loads kept the last, so the task registered with kl_distill without a word."""
    path = tmp_path / f"t{suffix}"
    if suffix == ".yaml":
        path.write_text("name: dup\nquery_instruction: a\nkey_instruction: b\nloss: contrastive\nloss: kl_distill\n")
    else:
        path.write_text('{"name": "dup",\n "query_instruction": "a",\n "key_instruction": "b",\n'
                        ' "loss": "contrastive",\n "loss": "kl_distill"}\n')
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{tmp_path}/{message}"
    assert "dup" not in list_tasks()


def test_a_nul_byte_in_a_task_file_names_its_line_and_column(tmp_path):
    """PyYAML's ReaderError has no mark: it said 'in "<unicode string>", position 33'."""
    path = tmp_path / "t.yaml"
    path.write_text("name: x\nquery_instruction: a\x00\nkey_instruction: b\n")
    with pytest.raises(ValueError) as err:
        register_tasks_from_file(path)
    assert str(err.value) == f"{path}:2:21: cannot parse task file: NUL not allowed in YAML"
