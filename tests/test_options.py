"""ConvertOptions and the CLI speak one format vocabulary (formats.Format): a spelling is
normalised or refused, never silently turned into a conversion that writes no assets."""

import pytest

from terramesh_stac import cli
from terramesh_stac.converters.formats import Format
from terramesh_stac.converters.manifest import content_id, source_fingerprint
from terramesh_stac.converters.pipeline import ConvertOptions, convert_shard, shard_settings
from terramesh_stac.converters.source import open_source
from terramesh_stac.converters.synth import generate
from tests.conftest import read_items

SHARD = "majortom_shard_000001.tar"


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("options-source")
    generate(root, split="val", shards=1, samples_per_shard=2, seed=5)
    return root


def test_upper_case_formats_are_normalised_and_write_cogs(one_shard, tmp_path):
    options = ConvertOptions(dest=str(tmp_path / "out"), formats=("COG",))
    assert options.formats == (Format.COG,)
    report = convert_shard(str(one_shard), "val", SHARD, options)
    assert report.items == 2 and not report.errors
    for item in read_items(tmp_path / "out").values():
        for modality in ("S2L2A", "S1RTC", "DEM"):
            asset = item["assets"][modality]
            assert asset["href"].endswith(f"/{modality}.tif")
            assert (tmp_path / "out" / "assets" / item["id"] / f"{modality}.tif").stat().st_size == asset["file:size"]
    # the content id holds the lower-case value: the same options spelled "cog" are done already
    again = convert_shard(str(one_shard), "val", SHARD, ConvertOptions(dest=str(tmp_path / "out")))
    assert again.skipped and again.content_id == report.content_id


def test_content_id_settings_are_the_plain_lower_case_strings(one_shard, tmp_path):
    """Existing destinations keep their content ids: settings are what they were before the enum."""
    options = ConvertOptions(
        dest=str(tmp_path),
        formats=("Cog", "ZARR"),
        modality_formats=(("s1rtc", ("REF",)),),
        modalities=("s2l2a", "S1RTC"),
    )
    settings = shard_settings(options, limit=None)
    assert settings == {
        "collection": "terramesh",
        "formats": ["cog", "zarr"],
        "modality_formats": {"S1RTC": ["ref"]},
        "modalities": ["S1RTC", "S2L2A"],
        "revision": None,
        "limit": None,
        "s3_public_url": None,
    }
    assert all(type(f) is str for f in settings["formats"] + settings["modality_formats"]["S1RTC"])
    fingerprint = source_fingerprint(open_source(str(one_shard)), "val", SHARD, options.modalities)
    spelled = ConvertOptions(
        dest=str(tmp_path),
        formats=("cog", "zarr"),
        modality_formats=(("S1RTC", ("ref",)),),
        modalities=("S1RTC", "S2L2A"),
    )
    assert content_id(fingerprint, settings) == content_id(fingerprint, shard_settings(spelled, None))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"formats": ("tiff",)}, "unknown format 'tiff'; choose from cog, zarr, ref"),
        ({"formats": ("cog", "geotiff")}, "unknown format 'geotiff'"),
        ({"formats": ()}, "no format given"),
        ({"modality_formats": (("S1GRD", ("kerchunk",)),)}, "unknown format 'kerchunk'"),
        ({"modality_formats": (("S1GRD", ()),)}, "no format given"),
        ({"modality_formats": (("S3OLCI", ("cog",)),)}, "unknown modality 'S3OLCI'; choose from S2L1C"),
        ({"modalities": ("S2L2A", "S2L3")}, "unknown modality 'S2L3'"),
        ({"modalities": ()}, "no modality given"),
    ],
)
def test_unknown_or_missing_values_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError) as e:
        ConvertOptions(dest=str(tmp_path), **kwargs)
    assert message in str(e.value)


def test_modality_names_and_formats_are_normalised():
    options = ConvertOptions(
        dest="out", formats="ZARR", modality_formats={"s1grd": ["Ref", "ref"]}, modalities=("s2l2a", "S2L2A", "dem")
    )
    assert options.formats == (Format.ZARR,)  # one string is one format, not its letters
    assert options.modality_formats == (("S1GRD", (Format.REF,)),)
    assert options.formats_for("S1GRD") == (Format.REF,) and options.formats_for("DEM") == (Format.ZARR,)
    assert options.modalities == ("S2L2A", "DEM")


def test_cli_refuses_an_unknown_format_with_its_message(capsys, tmp_path):
    src = str(tmp_path)  # a folder that exists: the source is checked first
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", src, "--dest", "out", "--format", "cog,tiff"])
    assert e.value.code == 2
    assert "unknown format(s) ['tiff']; choose from cog, zarr, ref" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", src, "--dest", "out", "--format-for", "S3OLCI=cog"])
    assert "expected MODALITY=FORMATS with MODALITY one of S2L1C" in capsys.readouterr().err


def test_cli_parses_formats_into_the_enum(tmp_path):
    args = cli.build_parser().parse_args(
        ["convert", str(tmp_path), "--format", "COG,zarr", "--format-for", "s1grd=REF"]
    )
    assert args.format == (Format.COG, Format.ZARR)
    assert args.format_for == [("S1GRD", (Format.REF,))]


def test_cli_refuses_an_unknown_modality_before_converting(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:  # refused while parsing: bad usage
        cli.main(["convert", str(tmp_path), "--dest", str(tmp_path / "out"), "--modalities", "S2L2A,S9"])
    assert e.value.code == cli.EXIT_USAGE
    assert "unknown modality 'S9'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
