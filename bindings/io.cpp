// safetensors, Megatron indexed datasets and the data loader for Python. Tensor
// arguments may be mambatron.Tensors or any DLPack array; dataset sequences come back
// as read-only numpy views of the memory-mapped .bin.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "mambatron/checkpoint.h"
#include "mambatron/data.h"

namespace mambatron::bind {

namespace {

TensorMap to_tensor_map(const py::dict& d, const char* op) {
  TensorMap m;
  for (auto kv : d) {
    MT_CHECK(py::isinstance<py::str>(kv.first), TypeError, op, ": tensor names must be str, got ",
             std::string(py::str(py::type::of(kv.first))));
    std::string name = kv.first.cast<std::string>();
    m[name] = as_tensor(kv.second, op, name.c_str());
  }
  return m;
}

StringMap to_string_map(const py::object& o, const char* op) {
  StringMap m;
  if (o.is_none()) return m;
  for (auto kv : o.cast<py::dict>()) {
    MT_CHECK(py::isinstance<py::str>(kv.first) && py::isinstance<py::str>(kv.second), TypeError, op,
             ": metadata keys and values must be str");
    m[kv.first.cast<std::string>()] = kv.second.cast<std::string>();
  }
  return m;
}

py::dict to_dict(const TensorMap& m) {
  py::dict d;
  for (const auto& kv : m) d[py::str(kv.first)] = py::cast(kv.second);
  return d;
}

// Token ids from a list, numpy array, Tensor or anything numpy can read, as int64.
using TokenArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

TokenArray token_array(py::handle h) {
  if (py::isinstance<Tensor>(h)) h = py::cast(h.cast<Tensor>().to(Device::cpu())).attr("numpy")();
  TokenArray a = TokenArray::ensure(h);
  MT_CHECK(a && a.ndim() == 1, ValueError, "indexed dataset: tokens must be a 1-D sequence of integers");
  return a;
}

const char* numpy_name(int code) {
  static const char* names[] = {"", "uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16"};
  return names[code];
}

// Tokens [offset, offset + length) of sequence i as a read-only numpy view that keeps
// the dataset (and so its mapping) alive.
py::array sequence_view(const std::shared_ptr<IndexedDataset>& ds, int64_t i, int64_t offset, int64_t length) {
  int64_t n = ds->sequence_length(i);
  if (length < 0) length = n - offset;
  MT_CHECK(offset >= 0 && length >= 0 && offset + length <= n, ValueError, ds->prefix(), ": tokens [", offset, ", ",
           offset + length, ") of sequence ", i, " are outside its ", n, " tokens");
  auto* keep = new std::shared_ptr<IndexedDataset>(ds);
  py::capsule base(keep, [](void* p) { delete static_cast<std::shared_ptr<IndexedDataset>*>(p); });
  const uint8_t* at = ds->sequence_bytes(i) + offset * int64_t(ds->itemsize());
  py::array a(py::dtype(numpy_name(ds->dtype_code())), {length}, {int64_t(ds->itemsize())}, at, base);
  a.attr("setflags")(py::arg("write") = false);
  return a;
}

DataSplit to_split(const std::string& s) {
  if (s == "all") return DataSplit::all;
  if (s == "train") return DataSplit::train;
  if (s == "eval") return DataSplit::eval;
  throw ValueError("DataLoader: split '" + s + "' is not one of 'all', 'train', 'eval'");
}

}  // namespace

void bind_io(py::module_& m) {
  // ---- safetensors
  m.def(
      "save_safetensors",
      [](const std::string& path, const py::dict& tensors, const py::object& metadata) {
        TensorMap t = to_tensor_map(tensors, "save_safetensors");
        StringMap md = to_string_map(metadata, "save_safetensors");
        py::gil_scoped_release release;
        save_safetensors(path, t, md);
      },
      py::arg("path"), py::arg("tensors"), py::arg("metadata") = py::none(),
      R"(Writes {name: array} (any dtype of ours, CPU or CUDA, any layout) and {str: str} metadata
to one safetensors file, atomically (PATH.tmp, fsync, rename).)");
  m.def(
      "save_safetensors_sharded",
      [](const std::string& dir, const py::dict& tensors, const py::object& metadata, uint64_t max_shard_bytes,
         const std::string& stem) {
        TensorMap t = to_tensor_map(tensors, "save_safetensors_sharded");
        StringMap md = to_string_map(metadata, "save_safetensors_sharded");
        py::gil_scoped_release release;
        return save_safetensors_sharded(dir, t, md, max_shard_bytes, stem);
      },
      py::arg("dir"), py::arg("tensors"), py::arg("metadata") = py::none(), py::kw_only(),
      py::arg("max_shard_bytes") = uint64_t(5) << 30, py::arg("stem") = "model",
      R"(Writes DIR/STEM.safetensors, or STEM-0000K-of-0000N.safetensors shards plus
STEM.safetensors.index.json when the total passes max_shard_bytes. Returns the paths written.)");
  m.def(
      "load_safetensors",
      [](const std::string& path, bool mmap, const std::string& stem) {
        SafetensorsContents c;
        {
          py::gil_scoped_release release;
          c = load_safetensors(path, mmap ? LoadMode::mmap : LoadMode::copy, stem);
        }
        return to_dict(c.tensors);
      },
      py::arg("path"), py::kw_only(), py::arg("mmap") = false, py::arg("stem") = "model",
      R"({name: Tensor} from a safetensors file, an index .json, or a folder holding STEM.safetensors
or STEM.safetensors.index.json. mmap=True: CPU tensors view a private copy-on-write mapping.)");
  m.def(
      "safetensors_metadata",
      [](const std::string& path, const std::string& stem) {
        StringMap md;
        list_safetensors(path, &md, stem);
        return md;
      },
      py::arg("path"), py::kw_only(), py::arg("stem") = "model",
      "The __metadata__ of a safetensors file or checkpoint (its first shard's).");
  m.def(
      "list_safetensors",
      [](const std::string& path, const std::string& stem) {
        py::list out;
        for (const auto& e : list_safetensors(path, nullptr, stem)) {
          py::dict d;
          d["name"] = e.name;
          d["dtype"] = e.dtype;
          d["shape"] = py::tuple(py::cast(e.shape));
          d["file"] = e.file;
          d["data_offsets"] = py::make_tuple(e.begin, e.end);
          out.append(d);
        }
        return out;
      },
      py::arg("path"), py::kw_only(), py::arg("stem") = "model",
      "[{name, dtype, shape, file, data_offsets}] from the headers alone, in name order.");

  // ---- indexed datasets
  m.def("token_code_for_vocab", &token_code_for_vocab, py::arg("vocab_size"),
        "Megatron's dtype code for a vocabulary: 8 (uint16) below 65500, else 4 (int32).");
  m.def("token_code_name", &token_code_name, py::arg("code"), "'uint16' for 8, and so on (codes 1..8).");
  m.def("token_code_size", &token_code_size, py::arg("code"), "Bytes per token for a dtype code.");

  py::class_<IndexedDatasetWriter>(m, "IndexedDatasetWriter", R"(Writes PREFIX.bin and PREFIX.idx
(Megatron's layout). finalize() commits both; as a context manager it finalizes on success and
removes its temporary files on an exception.)")
      .def(py::init<const std::string&, int>(), py::arg("prefix"), py::arg("dtype_code"))
      .def("add_document", [](IndexedDatasetWriter& w, py::handle tokens) {
        TokenArray a = token_array(tokens);
        w.add_document(a.data(), size_t(a.size()));
      }, py::arg("tokens"), "One document of one sequence.")
      .def("add_sequence", [](IndexedDatasetWriter& w, py::handle tokens) {
        TokenArray a = token_array(tokens);
        w.add_sequence(a.data(), size_t(a.size()));
      }, py::arg("tokens"), "One sequence of the current document.")
      .def("end_document", &IndexedDatasetWriter::end_document)
      .def("finalize", &IndexedDatasetWriter::finalize)
      .def("abort", &IndexedDatasetWriter::abort)
      .def("__enter__", [](IndexedDatasetWriter& w) -> IndexedDatasetWriter& { return w; },
           py::return_value_policy::reference)
      .def("__exit__", [](IndexedDatasetWriter& w, py::handle type, py::handle, py::handle) {
        if (type.is_none()) w.finalize();
        else w.abort();
        return false;
      })
      .def_property_readonly("prefix", &IndexedDatasetWriter::prefix)
      .def_property_readonly("dtype_code", &IndexedDatasetWriter::dtype_code)
      .def_property_readonly("num_sequences", &IndexedDatasetWriter::num_sequences)
      .def_property_readonly("num_documents", &IndexedDatasetWriter::num_documents)
      .def_property_readonly("num_tokens", &IndexedDatasetWriter::num_tokens);

  py::class_<IndexedDataset, std::shared_ptr<IndexedDataset>>(m, "IndexedDataset", R"(PREFIX.idx and
PREFIX.bin, memory-mapped and validated. ds[i] is sequence i as a read-only numpy view.)")
      .def(py::init<const std::string&>(), py::arg("prefix"))
      .def_property_readonly("prefix", &IndexedDataset::prefix)
      .def_property_readonly("dtype_code", &IndexedDataset::dtype_code)
      .def_property_readonly("dtype", [](const IndexedDataset& d) { return token_code_name(d.dtype_code()); })
      .def_property_readonly("num_sequences", &IndexedDataset::num_sequences)
      .def_property_readonly("num_documents", &IndexedDataset::num_documents)
      .def_property_readonly("num_tokens", &IndexedDataset::num_tokens)
      .def("__len__", &IndexedDataset::num_sequences)
      .def("sequence_length", &IndexedDataset::sequence_length, py::arg("i"))
      .def("document_start", &IndexedDataset::document_start, py::arg("d"),
           "Document d is sequences [document_start(d), document_start(d + 1)).")
      .def("token_offsets", [](const IndexedDataset& ds) {
        py::array_t<int64_t> out(ds.num_sequences() + 1);
        int64_t* p = out.mutable_data();
        p[0] = 0;
        for (int64_t i = 0; i < ds.num_sequences(); ++i) p[i + 1] = p[i] + ds.sequence_length(i);
        return out;
      }, "int64 [num_sequences + 1]: the tokens before each sequence, then the total.")
      .def("document_index", [](const IndexedDataset& ds) {
        py::array_t<int64_t> out(ds.num_documents() + 1);
        for (int64_t d = 0; d <= ds.num_documents(); ++d) out.mutable_data()[d] = ds.document_start(d);
        return out;
      }, "int64 [num_documents + 1]: document d is sequences [index[d], index[d + 1]).")
      .def("__getitem__", [](const std::shared_ptr<IndexedDataset>& ds, int64_t i) {
        if (i < 0) i += ds->num_sequences();
        return sequence_view(ds, i, 0, -1);
      })
      .def("get", &sequence_view, py::arg("i"), py::arg("offset") = 0, py::arg("length") = -1,
           "Tokens [offset, offset + length) of sequence i (length -1: to its end), a read-only view.")
      .def("read", [](const IndexedDataset& ds, int64_t i, int64_t offset, int64_t length) {
        int64_t n = ds.sequence_length(i);
        if (length < 0) length = n - offset;
        MT_CHECK(length >= 0, ValueError, ds.prefix(), ": offset ", offset, " is past sequence ", i, "'s ", n,
                 " tokens");
        py::array_t<int64_t> out(length);
        ds.read(i, offset, length, out.mutable_data());
        return out;
      }, py::arg("i"), py::arg("offset") = 0, py::arg("length") = -1, "The same tokens as a new int64 array.");

  py::class_<DataLoader>(m, "DataLoader", R"(Samples of seq_len + 1 tokens packed across the
documents of an IndexedDataset (each followed by eod_id when append_eod), in a seeded order
that is the same on every machine, with per-token document ids (seq_idx) and a resumable state.
split 'train'/'eval' with eval_fraction holds out the last documents for evaluation.)")
      .def(py::init([](py::object dataset, int64_t seq_len, uint64_t seed, bool shuffle, bool append_eod,
                       int64_t eod_id, const std::string& split, double eval_fraction, bool int64_tokens) {
             std::shared_ptr<IndexedDataset> ds = py::isinstance<py::str>(dataset)
                                                      ? std::make_shared<IndexedDataset>(dataset.cast<std::string>())
                                                      : dataset.cast<std::shared_ptr<IndexedDataset>>();
             DataLoaderOptions o;
             o.seq_len = seq_len;
             o.seed = seed;
             o.shuffle = shuffle;
             o.append_eod = append_eod;
             o.eod_id = eod_id;
             o.split = to_split(split);
             o.eval_fraction = eval_fraction;
             o.int64_tokens = int64_tokens;
             return std::make_unique<DataLoader>(ds, o);
           }),
           py::arg("dataset"), py::arg("seq_len"), py::kw_only(), py::arg("seed") = 1234, py::arg("shuffle") = true,
           py::arg("append_eod") = true, py::arg("eod_id") = 0, py::arg("split") = "all",
           py::arg("eval_fraction") = 0.0, py::arg("int64_tokens") = false)
      .def_property_readonly("num_samples", &DataLoader::num_samples, "Samples per epoch.")
      .def_property_readonly("num_documents", &DataLoader::num_documents)
      .def_property_readonly("num_stream_tokens", &DataLoader::num_stream_tokens)
      .def_property_readonly("seq_len", [](const DataLoader& l) { return l.options().seq_len; })
      .def("__len__", &DataLoader::num_samples)
      .def("next_batch", [](DataLoader& l, int64_t batch_size) {
        py::gil_scoped_release release;
        return l.next_batch(batch_size);
      }, py::arg("batch_size"), "(tokens [b, seq_len + 1] int32 or int64, seq_idx [b, seq_len + 1] int32).")
      .def("sample", [](const DataLoader& l, int64_t k) {
        int64_t n = l.options().seq_len + 1;
        py::array_t<int64_t> tokens(n);
        py::array_t<int32_t> seq_idx(n);
        l.sample(k, tokens.mutable_data(), seq_idx.mutable_data());
        return py::make_tuple(tokens, seq_idx);
      }, py::arg("k"), "Sample k in stream order: (tokens int64, seq_idx int32) numpy arrays.")
      .def("sample_at", &DataLoader::sample_at, py::arg("epoch"), py::arg("index"),
           "The stream-order sample id at position index of the given epoch's order.")
      .def("state_dict", [](const DataLoader& l) {
        py::dict d;
        d["epoch"] = l.state().epoch;
        d["index"] = l.state().index;
        return d;
      }, "{'epoch', 'index'}: the next sample's place, for an exact resume.")
      .def("load_state_dict", [](DataLoader& l, const py::dict& d) {
        MT_CHECK(d.contains("epoch") && d.contains("index"), ValueError,
                 "DataLoader.load_state_dict: expected keys 'epoch' and 'index'");
        l.set_state({d["epoch"].cast<uint64_t>(), d["index"].cast<uint64_t>()});
      }, py::arg("state"));
}

}  // namespace mambatron::bind
